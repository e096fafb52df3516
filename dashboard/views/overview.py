"""Overview: per project, the funnel from images to exports, and collection over time."""

import altair as alt
import pandas as pd
import streamlit as st

from dashboard.common import CACHE_TTL_S, database_url, project_picker, refresh_button
from pixmo import curation
from pixmo.curation.overview import STAGE_HELP
from pixmo.db.session import get_database


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def load(db_url: str, project_id: int | None):
    with get_database(db_url).session() as session:
        return curation.funnel(session, project_id), curation.collection_over_time(session, project_id)


st.title("Overview")
left, right = st.columns([3, 1], vertical_alignment="bottom")
with left:
    project_id = project_picker("overview_project")
with right:
    refresh_button()
funnels, over_time = load(database_url(), project_id)

if not funnels:
    st.info("No projects yet. Create one with `pixmo project create`, or try `pixmo demo`.")

st.header("Funnel")
for pf in funnels:
    st.subheader(f"{pf.name} · {pf.kind}")
    table = pd.DataFrame(
        [{"stage": s.name, "images": s.count, "% of images": s.pct_of_images, "% of previous": s.pct_of_previous}
         for s in pf.stages]
    )
    chart_col, table_col = st.columns([3, 2])
    with chart_col:
        order = [s.name for s in pf.stages]
        bars = alt.Chart(table).mark_bar().encode(
            x=alt.X("images:Q", title="images", axis=alt.Axis(tickMinStep=1, format="d")),
            y=alt.Y("stage:N", sort=order, title=None),
            color=alt.Color("stage:N", sort=order, legend=None),
            tooltip=["stage", "images", "% of images", "% of previous"],
        )
        labels = bars.mark_text(align="left", dx=4).encode(text="images:Q", color=alt.value("#333"))
        st.altair_chart((bars + labels).properties(height=36 * len(order)))
    with table_col:
        st.dataframe(table, hide_index=True,
                     column_config={"% of images": st.column_config.NumberColumn(format="%.1f %%"),
                                    "% of previous": st.column_config.NumberColumn(format="%.1f %%")})

with st.expander("What the stages mean"):
    st.markdown("\n".join(f"- **{name}**: {text}" for name, text in STAGE_HELP.items()))

st.header("Collection over time")
if over_time:
    frame = pd.DataFrame(over_time)
    frame["day"] = pd.to_datetime(frame["day"])
    chart = alt.Chart(frame).mark_line(point=True).encode(
        x=alt.X("day:T", title="day (UTC)"), y=alt.Y("count:Q", title="rows made", axis=alt.Axis(tickMinStep=1, format="d")),
        color=alt.Color("series:N", title=None), tooltip=["day:T", "series", "count"],
    )
    st.altair_chart(chart.properties(height=300))
    totals = frame.groupby("series", sort=False)["count"].sum().reset_index()
    st.dataframe(totals, hide_index=True)
else:
    st.info("Nothing collected yet.")
