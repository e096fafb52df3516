"""Annotators: throughput, active time, speech, rejection rate and gold accuracy, outliers marked."""

import pandas as pd
import streamlit as st

from dashboard.common import CACHE_TTL_S, database_url, project_picker, refresh_button
from pixmo import curation
from pixmo.curation.annotators import OUTLIER_COLUMNS, OUTLIER_Z
from pixmo.db.session import get_database

OUTLIER_STYLE = "background-color: #ffd6d6; color: #8a0000; font-weight: 600"


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def load(db_url: str, project_id: int | None, tolerance: float):
    with get_database(db_url).session() as session:
        return [r.as_row() for r in curation.annotator_stats(session, project_id, tolerance)]


def highlight(frame: pd.DataFrame) -> pd.DataFrame:
    styles = pd.DataFrame("", index=frame.index, columns=frame.columns)
    for i, outliers in frame["outliers"].items():
        for column in filter(None, (c.strip() for c in outliers.split(","))):
            if column in styles.columns:
                styles.loc[i, column] = OUTLIER_STYLE
    return styles


st.title("Annotators")
left, middle, right = st.columns([3, 2, 1], vertical_alignment="bottom")
with left:
    project_id = project_picker("annotators_project")
with middle:
    tolerance = st.slider("Gold tolerance (normalised distance)", 0.01, 0.2, curation.DEFAULT_TOLERANCE, 0.01,
                          key="annotators_tolerance")
with right:
    refresh_button()

rows = load(database_url(), project_id, tolerance)
if not rows:
    st.info("No annotations yet.")
    st.stop()

frame = pd.DataFrame(rows).drop(columns=["user_id"])
frame = frame[["annotator", "outliers", *[c for c in frame.columns if c not in ("annotator", "outliers")]]]
sort_by = st.selectbox("Sort by", list(frame.columns), index=list(frame.columns).index("submitted"), key="annotators_sort")
descending = st.toggle("Descending", value=True, key="annotators_desc")
frame = frame.sort_values(sort_by, ascending=not descending, na_position="last").reset_index(drop=True)

flagged = frame[frame["outliers"] != ""]
st.metric("Annotators", len(frame))
if len(flagged):
    st.warning("Outliers: " + "; ".join(f"{r.annotator} ({r.outliers})" for r in flagged.itertuples()))
st.dataframe(frame.style.apply(highlight, axis=None).format(precision=2, na_rep="–"), hide_index=True)
st.caption(
    "items_per_hour: submitted items per hour of active time · rejection_rate: rejected / (approved + rejected) "
    "over the current verdicts on the annotator's recordings, transcripts, point sets, QA and assignments · "
    "gold_accuracy: share of point sets on gold images whose points match the gold answer one-to-one within the "
    f"tolerance · highlighted cells are outliers (robust z-score beyond {OUTLIER_Z} in {', '.join(OUTLIER_COLUMNS)})."
)
