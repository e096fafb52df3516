"""Entry point of the curation dashboard: log in, then Overview, Annotators, Browse, Quality, Exports.

Run with ``pixmo dashboard`` (or ``streamlit run dashboard/app.py``); settings come from the
``PIXMO_*`` environment, like every other tool.
"""

import streamlit as st

from dashboard.common import current_reviewer, logout

st.set_page_config(page_title="PixMo curation", page_icon=":material/dataset:", layout="wide")

reviewer = current_reviewer()
if reviewer is None:
    page = st.navigation([st.Page("views/login.py", title="Log in", icon=":material/login:")])
else:
    page = st.navigation([
        st.Page("views/overview.py", title="Overview", icon=":material/monitoring:", default=True),
        st.Page("views/annotators.py", title="Annotators", icon=":material/group:"),
        st.Page("views/browse.py", title="Browse", icon=":material/image_search:"),
        st.Page("views/quality.py", title="Quality", icon=":material/fact_check:"),
        st.Page("views/exports.py", title="Exports", icon=":material/inventory_2:"),
    ])
    with st.sidebar:
        st.caption(f"Logged in as **{reviewer.username}** ({reviewer.role})")
        st.button("Log out", on_click=logout, key="logout")
page.run()
