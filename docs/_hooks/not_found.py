"""The 404 page, served for a missing address at any depth, under any sub-path.

MkDocs renders `404.html` with root-absolute addresses (`/assets/...`) when `site_url` is
unset, since it cannot know where the site will live; served under a sub-path (a project
page such as `https://owner.github.io/recurrax/`) the page then loads without its styles,
scripts or working links. The project sets no `site_url` (it knows no deployment address,
and the site must also work from a plain folder), so this hook makes the page find the site's
root when it is shown:

- a small script at the top of `<head>` finds the root: the part of the address before the
  first name the site has at its top level (`api`, `concepts`, `assets`, ...), or else the
  longest parent folder that holds this `404.html` (asked with a synchronous `HEAD`
  request, at most once per folder of the address); it writes `<base href="ROOT">`;
- every `href="/..."` and `src="/..."` becomes relative, so it resolves against that base;
- the theme's own root (`__md_scope`, and `base` and `search` in its `__config`) is set to
  it too, so that search, the palette switch and the links of the navigation work.

With a `site_url` MkDocs already writes the right addresses, and the page is left as it is.
"""

import json
import re


_FIND_ROOT = """<script>(function () {
  var top = %(top)s;
  var parts = location.pathname.split("/").slice(0, -1);
  var root = null;
  for (var i = 1; i < parts.length && root === null; i++) {
    if (top.indexOf(parts[i]) >= 0) root = parts.slice(0, i).join("/") + "/";
  }
  var last = location.pathname.split("/").pop();
  if (root === null && top.indexOf(last) >= 0) root = parts.join("/") + "/";
  for (var n = parts.length; n > 1 && root === null; n--) {
    var folder = parts.slice(0, n).join("/") + "/";
    try {
      var probe = new XMLHttpRequest();
      probe.open("HEAD", folder + "404.html", false);
      probe.send();
      if (probe.status === 200) root = folder;
    } catch (e) {}
  }
  window.__site_root = root === null ? "/" : root;
  document.write('<base href="' + window.__site_root + '">');
})();</script>"""

_FIX_CONFIG = """<script>(function () {
  var element = document.getElementById("__config");
  var config = JSON.parse(element.textContent);
  config.base = window.__site_root;
  config.search = window.__site_root + config.search.replace(/^\\//, "");
  element.textContent = JSON.stringify(config);
})();</script>"""


def on_post_template(output_content: str, *, template_name: str, config) -> str:
    if template_name != "404.html" or config.site_url:
        return output_content
    top = sorted({f.dest_uri.split("/")[0] for f in _files} | {"404.html", "sitemap.xml", "search"})
    head = output_content.index("<head>") + len("<head>")
    html = output_content[:head] + _FIND_ROOT % {"top": json.dumps(top)} + output_content[head:]
    html = re.sub(r'\b(href|src)="/(?!/)', r'\1="', html)
    html = html.replace(
        '__md_scope=new URL("/",location)', "__md_scope=new URL(__site_root,location)"
    )
    config_end = re.search(r'<script id="__config"[^>]*>.*?</script>', html, re.S).end()
    return html[:config_end] + _FIX_CONFIG + html[config_end:]


_files = []


def on_files(files, *, config):
    _files[:] = [f for f in files if not f.inclusion.is_excluded()]  # not docs/_hooks/
    return files
