"""The Streamlit curation dashboard; start it with ``pixmo dashboard``. Pages live in ``views/``,
queries in ``pixmo.curation``."""
