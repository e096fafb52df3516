"""Exports: the dataset snapshots with their filters, counts, versions, shards and manifests."""

import pandas as pd
import streamlit as st

from dashboard.common import database
from pixmo import curation

CURSOR_KEY = "exports_cursors"

st.title("Exports")
cursors = st.session_state.setdefault(CURSOR_KEY, [None])
with database().session() as session:
    exports, next_before = curation.list_exports(session, before_id=cursors[-1], limit=25)

if not exports:
    st.info("No snapshots yet. Write one with the exporter (`pixmo export …`).")
    st.stop()


def summary(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items() if isinstance(v, (int, float)))


st.dataframe(pd.DataFrame([{
    "snapshot": e["snapshot_id"], "format": e["format"], "created": e["created_at"], "shards": e["n_shards"],
    "MB": round(e["total_bytes"] / 1e6, 2), "counts": summary(e["counts"]), "output": e["output_url"],
} for e in exports]), hide_index=True)

for e in exports:
    with st.expander(f"{e['snapshot_id']} · {e['format']} · {e['n_shards']} shards", expanded=len(exports) == 1):
        st.markdown(f"**Output** `{e['output_url']}`  \n**Manifest sha256** `{e['manifest_sha256'] or '-'}`"
                    + (f"  \n**Job** #{e['job_id']}" if e["job_id"] else ""))
        left, right = st.columns(2)
        with left:
            st.markdown("**Filters**")
            st.json(e["filters"], expanded=True)
            st.markdown("**Versions**")
            st.json(e["versions"], expanded=False)
        with right:
            st.markdown("**Counts**")
            st.dataframe(pd.DataFrame([{"what": k, "count": v} for k, v in e["counts"].items()
                                       if isinstance(v, (int, float))]), hide_index=True)
        st.markdown("**Shards**")
        if e["shards"]:
            st.dataframe(pd.DataFrame(e["shards"]), hide_index=True)
        if not e["manifest_sha256"]:
            continue  # an HF export writes parquet files only: no manifest to read
        remote = curation.is_remote(e["output_url"])
        fetched = f"manifest_{e['id']}"  # a remote manifest, once fetched, stays for the session
        manifest = st.session_state.get(fetched)
        if not remote:
            manifest = curation.read_manifest(e["output_url"])
        elif manifest is None and st.button("Fetch the manifest file", key=f"fetch_{fetched}"):
            with st.spinner(f"Reading {e['output_url']}/manifest.json …"):
                manifest = st.session_state[fetched] = curation.read_manifest(e["output_url"])
            if manifest is None:
                st.warning(f"No readable manifest at {e['output_url']} (check the S3 endpoint and credentials).")
        if manifest is not None:
            st.markdown("**Manifest file**")
            st.json(manifest, expanded=False)

prev_col, next_col, _ = st.columns([1, 1, 6])
if prev_col.button("← Newer", disabled=len(cursors) == 1, key="exports_prev"):
    cursors.pop()
    st.rerun()
if next_col.button("Older →", disabled=next_before is None, key="exports_next"):
    cursors.append(next_before)
    st.rerun()
