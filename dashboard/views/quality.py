"""Quality: histograms of speech, speaking rate, caption length, ASR confidence and faithfulness,
flag counts, and the flagged items with a way into Browse."""

import altair as alt
import pandas as pd
import streamlit as st

from dashboard.common import CACHE_TTL_S, database, database_url, open_in_browse, plain, project_picker, refresh_button
from pixmo import curation
from pixmo.curation.quality import FLAGGED_SOURCES
from pixmo.db.session import get_database

SHOWN = ("speech_s", "wpm", "caption_words", "avg_logprob", "faithfulness", "no_speech_prob")
CURSOR_KEY = "quality_cursors"


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def load(db_url: str, project_id: int | None, bins: int):
    with get_database(db_url).session() as session:
        return [curation.histogram(session, m, project_id, bins) for m in SHOWN], curation.flag_counts(session, project_id)


st.title("Quality")
left, middle, right = st.columns([3, 2, 1], vertical_alignment="bottom")
with left:
    project_id = project_picker("quality_project")
with middle:
    bins = st.slider("Bins", 5, 60, 20, key="quality_bins")
with right:
    refresh_button()
histograms, flags = load(database_url(), project_id, bins)

st.header("Distributions")
cols = st.columns(2)
for i, hist in enumerate(histograms):
    with cols[i % 2]:
        st.subheader(hist.title)
        if not hist.total:
            st.caption("no data")
            continue
        sampled = f" · a sample: every {hist.sample_every}th row" if hist.sample_every > 1 else ""
        st.caption(f"n = {hist.total} · mean {hist.mean:.3g} {hist.unit} · min {hist.minimum:.3g} · max {hist.maximum:.3g}"
                   + sampled)
        frame = pd.DataFrame(hist.rows())
        chart = alt.Chart(frame).mark_bar().encode(
            x=alt.X("lo:Q", bin="binned", title=hist.unit), x2="hi:Q", y=alt.Y("count:Q", title="rows"),
            tooltip=["bin", "count"],
        )
        st.altair_chart(chart.properties(height=220))

st.header("Flags")
if flags:
    st.dataframe(pd.DataFrame(flags), hide_index=True)
else:
    st.caption("no quality flags")

st.header("Flagged items")
c1, c2 = st.columns(2)
source = c1.selectbox("Which", FLAGGED_SOURCES, key="quality_source",
                      format_func={"transcript": "transcripts with flags", "caption": "captions with flags",
                                   "review": "items a reviewer flagged"}.get)
flag_names = sorted({f["flag"] for f in flags if f["source"] == source})
flag = c2.selectbox("Flag", [None, *flag_names], format_func=lambda f: "any flag" if f is None else f, key="quality_flag",
                    disabled=source == "review")
signature = (project_id, source, flag)
if st.session_state.get("quality_sig") != signature:
    st.session_state["quality_sig"] = signature
    st.session_state[CURSOR_KEY] = [None]
cursors = st.session_state[CURSOR_KEY]
with database().session() as session:
    items, next_after = curation.flagged_items(session, source, None if source == "review" else flag, project_id,
                                               after_id=cursors[-1], limit=25)
if not items:
    st.caption("nothing flagged")
for item in items:
    text_col, button_col = st.columns([6, 1], vertical_alignment="center")
    if source == "review":
        text_col.markdown(f"**{item['target']}** on image #{item['image_id']}: {plain(item['reason']) or '(no reason)'}")
    else:
        text_col.markdown(f"**{source} #{item['id']}** on image #{item['image_id']} · `{', '.join(item['flags'])}` · "
                          f"{plain(item['text'][:120])}")
    if button_col.button("Open in Browse", key=f"open_{source}_{item['id']}"):
        open_in_browse(item["image_id"])
prev_col, next_col, _ = st.columns([1, 1, 6])
if prev_col.button("← Newer", disabled=len(cursors) == 1, key="quality_prev"):
    cursors.pop()
    st.rerun()
if next_col.button("Older →", disabled=next_after is None, key="quality_next"):
    cursors.append(next_after)
    st.rerun()
