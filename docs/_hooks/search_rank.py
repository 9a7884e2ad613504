"""MkDocs hook: the measurement pages under results/ rank below the rest in the site's search.

Those pages are written by the commands that measure (`python -m experiments speed ...`), so
they carry no front matter of their own; they name the models many times ("RG-LRU", "LRU")
while a reader who searches a class name wants its API entry (boosted on the API pages)."""

# 0.5 was enough until the performance page grew: lunr's scores depend on the lengths of all
# pages, and the selective-SSM page (which names the RG-LRU dozens of times) then ranked above
# the LRU's API entry for "LRU" (tests/test_docs.py checks every public class).
RESULTS_BOOST = 0.25


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri.startswith("results/"):
        page.meta.setdefault("search", {}).setdefault("boost", RESULTS_BOOST)
    return markdown
