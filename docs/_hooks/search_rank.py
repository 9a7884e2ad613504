"""MkDocs hook: the measurement pages under results/ rank below the rest in the site's search.

Those pages are written by the commands that measure (`python -m experiments speed ...`), so
they carry no front matter of their own; they name the models many times ("RG-LRU", "LRU")
while a reader who searches a class name wants its API entry (boosted on the API pages)."""

RESULTS_BOOST = 0.5


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri.startswith("results/"):
        page.meta.setdefault("search", {}).setdefault("boost", RESULTS_BOOST)
    return markdown
