"""The explorer's page scripts, run by st.navigation from streamlit_app.py (not meant to be imported)."""
