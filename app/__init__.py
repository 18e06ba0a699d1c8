"""Streamlit front end (thin pages over toast_core). Entry script: app/main.py."""
