"""Browse: filter images, page through them (keyset), and see and review everything about one."""

import html
import json

import pandas as pd
import streamlit as st

from dashboard.common import BROWSE_IMAGE_KEY, CACHE_TTL_S, current_reviewer, database, database_url, options, plain, store
from pixmo import curation
from pixmo.curation.browse import ANY_FLAG
from pixmo.curation.quality import faithfulness_score
from pixmo.errors import PixmoError


# Blobs are content-addressed, so a picture or a recording is the same for as long as its key
# (and, for the picture, the point sets drawn on it) are: no fetch and redraw on every rerun.
@st.cache_data(ttl=CACHE_TTL_S, max_entries=32, show_spinner=False)
def picture(storage_key: str, point_sets: list[dict]) -> tuple[bytes, dict[str, str]]:
    return curation.draw_point_sets(store().get_bytes(storage_key), point_sets)


@st.cache_data(ttl=CACHE_TTL_S, max_entries=64, show_spinner=False)
def blob(storage_key: str) -> bytes:
    return store().get_bytes(storage_key)

CURSORS_KEY = "browse_cursors"  # after_id of each page shown so far: [None, id1, id2, ...]
FILTER_SIG_KEY = "browse_filter_sig"
VERDICT_LABELS = {"approved": "Approve", "rejected": "Reject", "flagged": "Flag"}

st.title("Browse")
opts = options(database_url())

# ---------------------------------------------------------------- filters
projects = {p["id"]: f"{p['name']} ({p['kind']})" for p in opts["projects"]}
annotators = {a["id"]: a["username"] for a in opts["annotators"]}
c1, c2, c3, c4 = st.columns(4)
project_id = c1.selectbox("Project", [None, *projects], format_func=lambda v: "All projects" if v is None else projects[v],
                          key="browse_project")
status = c2.selectbox("Status", [None, *opts["statuses"]], format_func=lambda v: "Any status" if v is None else v,
                      key="browse_status")
flag = c3.selectbox("Quality flag", [None, *opts["flags"]],
                    format_func=lambda v: "Any or none" if v is None else ("any flag" if v == ANY_FLAG else v), key="browse_flag")
annotator_id = c4.selectbox("Annotator", [None, *annotators], format_func=lambda v: "Anyone" if v is None else annotators[v],
                            key="browse_annotator")
c5, c6, c7 = st.columns([4, 1, 1], vertical_alignment="bottom")
text = c5.text_input("Search captions", key="browse_text", placeholder="words in a caption")
newest_first = c6.toggle("Newest first", key="browse_newest")
limit = c7.selectbox("Per page", [25, 50, 100, 200], index=1, key="browse_limit")

filters = curation.BrowseFilters(project_id, status, flag, annotator_id, text.strip() or None, newest_first)
signature = (project_id, status, flag, annotator_id, filters.text, newest_first, limit)
if st.session_state.get(FILTER_SIG_KEY) != signature:
    st.session_state[FILTER_SIG_KEY] = signature
    st.session_state[CURSORS_KEY] = [None]
cursors: list = st.session_state[CURSORS_KEY]

with database().session() as session:
    page = curation.browse_images(session, filters, after_id=cursors[-1], limit=limit)

# ---------------------------------------------------------------- one page of results
st.caption(f"Page {len(cursors)} · {len(page.items)} images" + ("" if page.next_after else " · last page"))
if page.items:
    st.dataframe(
        pd.DataFrame([{
            "image": it.image_id, "size": f"{it.width}×{it.height}", "recordings": it.recordings, "captions": it.captions,
            "point sets": it.point_sets, "QA": it.qa_pairs, "reviews": it.reviews,
            "verdicts": ", ".join(f"{k} {v}" for k, v in sorted(it.verdicts.items())), "flags": ", ".join(it.flags),
            "caption": it.caption,
        } for it in page.items]),
        hide_index=True,
    )
else:
    st.info("No images match these filters.")
prev_col, next_col, _ = st.columns([1, 1, 6])
if prev_col.button("← Previous", disabled=len(cursors) == 1, key="browse_prev"):
    cursors.pop()
    st.rerun()
if next_col.button("Next →", disabled=page.next_after is None, key="browse_next"):
    cursors.append(page.next_after)
    st.rerun()

# ---------------------------------------------------------------- one image
st.divider()
ids = [it.image_id for it in page.items]
captions_by_id = {it.image_id: it.caption for it in page.items}
if st.session_state.get("browse_page_key") != (signature, cursors[-1]):
    st.session_state["browse_page_key"] = (signature, cursors[-1])
    # another page: show its first image. Set, not dropped: a dropped value leaves the browser's
    # widget on the old choice, which it sends back on the next rerun
    st.session_state["browse_pick"] = ids[0] if ids else None
    st.session_state["browse_jump"] = 0
wanted = st.session_state.pop(BROWSE_IMAGE_KEY, None)  # set by "Open in Browse" on other pages
if wanted is not None:
    st.session_state["browse_pick"] = wanted
current = st.session_state.get("browse_pick")
choices = ids if current is None or current in ids else [current, *ids]  # an opened image stays listed


def jump_to_image() -> None:
    """The id typed in becomes the picked image (and the box empties), so the two never disagree."""
    wanted_id = int(st.session_state.get("browse_jump") or 0)
    if wanted_id:
        st.session_state["browse_pick"] = wanted_id
    st.session_state["browse_jump"] = 0


pick_col, jump_col = st.columns([3, 1])
picked = pick_col.selectbox("Image", choices, format_func=lambda i: f"#{i} · {captions_by_id.get(i, '')[:80]}",
                            key="browse_pick")
jump_col.number_input("Or go to image id", min_value=0, step=1, key="browse_jump", on_change=jump_to_image)
if not isinstance(picked, int):  # what a browser sent for a widget whose choices have changed
    st.stop()
image_id = picked


def do_review(image_id: int, allowed: tuple) -> None:
    """Form callback: write the verdict before the page is drawn again, so the history is current.

    The form's widgets are keyed per image: one key for every image let the browser keep a choice
    made on another image and send it with this image's form (a verdict on an item not shown).
    """
    target = st.session_state.get(f"review_target_{image_id}")
    verdict = st.session_state.get(f"review_verdict_{image_id}")
    reason = st.session_state.get(f"review_reason_{image_id}", "")
    reviewer = current_reviewer()
    try:
        if target is None:
            raise PixmoError("choose an item to review")
        target = tuple(target)
        if target not in allowed:
            raise PixmoError("that item is not one of this image's; choose it again")
        with database().session(write_lock=True) as session:
            review = curation.submit_review(session, reviewer.id if reviewer else None, target[0], target[1], verdict, reason)
        st.session_state["review_message"] = ("success", f"Saved: {verdict} {target[0]} #{target[1]} (review #{review.id})")
        st.session_state[f"review_reason_{image_id}"] = ""
    except PixmoError as exc:
        st.session_state["review_message"] = ("error", f"Not saved: {exc}")


try:
    with database().session() as session:
        detail = curation.image_detail(session, image_id)
except PixmoError as exc:
    st.error(plain(str(exc)))
    st.stop()

image = detail["image"]
st.header(f"Image #{image['id']}")
st.caption(f"{image['width']}×{image['height']} {image['mime']} · {image['bytes']:,} bytes · sha256 {image['sha256']} · "
           f"source {plain(image['source'])}" + (f" · {plain(image['source_url'])}" if image["source_url"] else ""))
picture_col, info_col = st.columns([3, 2])
with picture_col:
    try:
        png, colors = picture(image["storage_key"], detail["point_sets"])
        st.image(png, caption="point sets drawn, one colour per label")
        if colors:
            st.markdown(" ".join(
                f"<span style='background:{c};color:white;padding:2px 8px;border-radius:4px;margin-right:4px'>{html.escape(label)}</span>"
                for label, c in colors.items()), unsafe_allow_html=True)
    except PixmoError as exc:
        st.warning(f"image bytes unavailable: {exc}")
with info_col:
    st.subheader("Projects")
    st.dataframe(pd.DataFrame([{"project": p["name"], "kind": p["kind"], "gold": p["is_gold"],
                                "gold answer": json.dumps(p["gold_answer"]) if p["gold_answer"] else ""}
                               for p in detail["projects"]]), hide_index=True)
    st.subheader("Point sets")
    if detail["point_sets"]:
        st.dataframe(pd.DataFrame([{"id": ps["id"], "label": ps["label"], "points": len(ps["points"]),
                                    "not present": ps["not_present"], "method": ps["method"], "annotator": ps["annotator"],
                                    "verdict": detail["current_verdicts"].get(f"point_set:{ps['id']}", "")}
                                   for ps in detail["point_sets"]]), hide_index=True)
    else:
        st.caption("none")

st.subheader("Captions")
for c in detail["captions"]:
    verdict = detail["current_verdicts"].get(f"caption:{c['id']}", "")
    st.markdown(f"**{c['kind']} caption #{c['id']}** · {plain(c['model'])} · prompt {plain(c['prompt_version'])} · {c['produced_by']}"
                + (f" · faithfulness {score:.2f}" if (score := faithfulness_score(c["faithfulness"])) is not None else "")
                + (f" · flags: `{', '.join(c['flags'])}`" if c["flags"] else "") + (f" · **{verdict}**" if verdict else ""))
    st.markdown(plain(c["text"]))
if not detail["captions"]:
    st.caption("none")

st.subheader("Recordings and transcripts")
for rec in detail["recordings"]:
    verdict = detail["current_verdicts"].get(f"recording:{rec['id']}", "")
    st.markdown(f"**Recording #{rec['id']}** by {plain(rec['annotator'])} · {rec['duration_s']:.1f} s · {rec['mime']}"
                + (f" · **{verdict}**" if verdict else ""))
    try:
        st.audio(blob(rec["storage_key"]), format=rec["mime"])
    except PixmoError as exc:
        st.warning(f"audio unavailable: {exc}")
    for t in rec["transcripts"]:
        st.markdown(f"Transcript #{t['id']} · {plain(t['asr_model'])} · {t['status']}"
                    + (f" · flags: `{', '.join(t['flags'])}`" if t["flags"] else ""))
        st.markdown(plain(t["text"] or t["error"] or ""))
        if t["metrics"]:
            st.dataframe(pd.DataFrame([t["metrics"]]), hide_index=True)
if not detail["recordings"]:
    st.caption("none")

st.subheader("Questions and answers")
if detail["qa_pairs"]:
    st.dataframe(pd.DataFrame([{"id": q["id"], "source": q["source"], "status": q["status"], "question": q["question"],
                                "answer": q["answer"], "revisions": len(q["revisions"] or [])} for q in detail["qa_pairs"]]),
                 hide_index=True)
else:
    st.caption("none")

st.subheader("Review history")
if detail["reviews"]:
    st.dataframe(pd.DataFrame([{"review": r["id"], "when": r["created_at"], "item": f"{r['target_type']} #{r['target_id']}",
                                "verdict": r["verdict"], "reason": r["reason"], "reviewer": r["reviewer"]}
                               for r in detail["reviews"]]), hide_index=True)
else:
    st.caption("no reviews yet")

# ---------------------------------------------------------------- review actions
st.subheader("Review")
message = st.session_state.pop("review_message", None)
if message:
    (st.success if message[0] == "success" else st.error)(message[1])
targets = curation.review_targets(detail)
if not targets:
    st.caption("nothing to review on this image")
else:
    described = {(t, i): text for t, i, text in targets}
    with st.form(f"review_form_{image_id}"):
        st.selectbox("Item", list(described), format_func=lambda key: described.get(key, str(key)), key=f"review_target_{image_id}")
        st.radio("Verdict", list(VERDICT_LABELS), format_func=VERDICT_LABELS.get, horizontal=True,
                 key=f"review_verdict_{image_id}")
        st.text_input("Reason (required to reject)", key=f"review_reason_{image_id}")
        st.form_submit_button("Save verdict", on_click=do_review, args=(image_id, tuple(described)))
