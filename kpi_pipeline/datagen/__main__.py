from kpi_pipeline.datagen import main

main()
