"""One Streamlit script per dashboard page, run by ``st.navigation`` in ``app.py``."""
