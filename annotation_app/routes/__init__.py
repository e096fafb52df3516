"""One router per resource; each serves its JSON API (under /api) and its pages."""
