"""Screenshots of the built documentation at a 1,280 px wide window, for review:
`make docs-shots` writes `site-shots/*.png` (not committed) from the site in `site/`.

Usage: python .ci/docs_shots.py SITE_DIR OUT_DIR [--chromium PATH]
"""

import argparse
import functools
import http.server
import os
import pathlib
import shutil
import subprocess
import sys
import threading


# The pages a reviewer looks at first: the home page, a concept page, the results and the
# performance overview.
PAGES = {
    "home": "",
    "concept-engine": "concepts/engine/",
    "results": "results/experiments/",
    "performance": "performance/",
}
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def shoot(site: pathlib.Path, out: pathlib.Path, chromium: str, pages=None, height=3000):
    """One PNG per page (`{name: path}` of `pages`, default `PAGES`), 1,280 px wide and
    `height` tall, served over HTTP from `site` as a reader gets it. Returns the files."""
    pages = PAGES if pages is None else pages
    out.mkdir(parents=True, exist_ok=True)
    handler = functools.partial(_Quiet, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    flags = ["--headless=new", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]
    if os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    written = []
    try:
        for name, path in pages.items():
            png = out / f"{name}.png"
            subprocess.run(
                [chromium, *flags, f"--window-size=1280,{height}", f"--screenshot={png}",
                 url + path],
                check=True, timeout=120, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            written.append(png)
    finally:
        httpd.shutdown()
        httpd.server_close()
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=pathlib.Path)
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--chromium", help="a Chromium or Chrome executable")
    args = parser.parse_args(argv)
    chromium = args.chromium or next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if chromium is None:
        print("docs-shots: no Chromium on PATH (apt-get install chromium)", file=sys.stderr)
        return 2
    if not (args.site / "index.html").exists():
        print(f"docs-shots: no built site in {args.site} (run `make docs`)", file=sys.stderr)
        return 2
    for png in shoot(args.site, args.out, chromium):
        print(png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
