"""The Streamlit curation dashboard; start it with ``pixmo dashboard``. Pages live in ``views/``,
queries in ``pixmo.curation``."""

from pathlib import Path

APP_PATH = Path(__file__).with_name("app.py")
