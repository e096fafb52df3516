"""The PixMo annotation web app (FastAPI): speech captions, pointing, ask-the-model and review.

Start it with ``pixmo serve``; build it in code with :func:`annotation_app.main.create_app`.
"""
