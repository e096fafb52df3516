"""Log in with a username and password or an API token; only reviewers and admins get in."""

import streamlit as st

from dashboard.common import ENDED_KEY, client_ip, database, remember
from pixmo import curation

st.title("PixMo curation dashboard")
st.write("Log in as a **reviewer** or **admin**. Annotators use the annotation app instead.")
if ended := st.session_state.pop(ENDED_KEY, None):
    st.warning(f"You were logged out: {ended}")

by_password, by_token = st.tabs(["Password", "API token"])
with by_password, st.form("login_password"):
    username = st.text_input("Username", key="login_username")
    password = st.text_input("Password", type="password", key="login_password")
    password_submitted = st.form_submit_button("Log in")
with by_token, st.form("login_token"):
    token = st.text_input("API token", type="password", key="login_token", help="Create one with `pixmo user token NAME`.")
    token_submitted = st.form_submit_button("Log in with token")

if password_submitted or token_submitted:
    try:
        if password_submitted:
            reviewer = curation.login(database(), username, password, ip=client_ip())
        else:
            reviewer = curation.login_with_token(database(), token)
    except curation.NotAllowedError as exc:
        st.error(f"Not logged in: {exc}")
    else:
        remember(reviewer)
        st.rerun()
