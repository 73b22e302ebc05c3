#!/usr/bin/env python3
"""Fetch the pinned front-end packages the pages load into a local cache, and map CDN URLs to cached files.

The pages load htmx, the htmx SSE extension, daisyUI and Tailwind's browser build
from jsDelivr. Machines without internet reach the npm registry, so this script
installs the same packages with npm into `.cache/assets/node_modules/`, a layout
that the demo's `--assets .cache/assets` option also serves. Tests serve the
pages' CDN requests from that folder through `local_path_for_url`.

Usage: python tools/assets.py [--dir DIR] [--check]
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "assets"

# Exact versions; each must match what the pages request. htmx.org 2.0.7 is the htmx
# that python-fasthtml 0.14.14 puts in every page (fasthtml.core.htmxsrc). htmx-ext-sse,
# daisyui and @tailwindcss/browser match the versions the package pins
# (components/modal.py, demo/app.py). axe-core was the npm registry's latest on 2026-12-04.
PINNED_PACKAGES = {
    "htmx.org": "2.0.7",
    "htmx-ext-sse": "2.2.4",
    "daisyui": "5.8.1",
    "@tailwindcss/browser": "4.3.3",
    "axe-core": "4.14.1",
}

# URL prefixes of the CDNs whose npm mirrors `local_path_for_url` understands.
# jsDelivr: https://cdn.jsdelivr.net/npm/<package>@<version>/<file>
# unpkg:    https://unpkg.com/<package>@<version>/<file>
CDN_NPM_PREFIXES = {
    "cdn.jsdelivr.net": "/npm/",
    "unpkg.com": "/",
}

# A package spec at the start of a CDN path: an optional @scope, the name, an optional @version.
_SPEC_PATTERN = re.compile(r"^(?P<name>(?:@[^/@]+/)?[^/@]+)(?:@(?P<version>[^/]+))?(?:/(?P<file>.*))?$")


def node_modules_dir(cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    "Return the `node_modules` folder inside `cache_dir`."
    return Path(cache_dir) / "node_modules"


def installed_version(package: str, cache_dir: Path = DEFAULT_CACHE_DIR) -> Optional[str]:
    "Return the version of `package` installed in the cache, or None when it is missing."
    manifest = node_modules_dir(cache_dir) / package / "package.json"
    if not manifest.is_file():
        return None
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("version")
    except (OSError, json.JSONDecodeError):
        return None


def missing_packages(cache_dir: Path = DEFAULT_CACHE_DIR) -> dict[str, str]:
    "Return the pinned packages whose exact version is not installed in the cache, as {name: version}."
    return {
        name: version
        for name, version in PINNED_PACKAGES.items()
        if installed_version(name, cache_dir) != version
    }


def install_assets(cache_dir: Path = DEFAULT_CACHE_DIR, env: Optional[dict] = None) -> dict[str, str]:
    "Install the pinned packages that are missing from `cache_dir` with npm; return the ones installed."
    cache_dir = Path(cache_dir)
    missing = missing_packages(cache_dir)
    if not missing:
        return {}

    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm was not found on PATH; install Node.js and npm (apt-get install -y nodejs npm).")

    cache_dir.mkdir(parents=True, exist_ok=True)
    # Every pinned package goes on the command line, not only the missing ones: with
    # --no-save there is no package.json, so npm removes installed packages it was not given.
    specs = [f"{name}@{version}" for name, version in PINNED_PACKAGES.items()]
    # The npm download cache goes inside cache_dir so that the install writes nothing into $HOME.
    command = [
        npm, "install", "--prefix", str(cache_dir), "--no-save", "--no-audit", "--no-fund",
        "--ignore-scripts", "--cache", str(cache_dir / ".npm-cache"), *specs,
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(
            f"npm install of {' '.join(specs)} failed with exit code {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}"
        )

    still_missing = missing_packages(cache_dir)
    if still_missing:
        found = {name: installed_version(name, cache_dir) for name in still_missing}
        raise RuntimeError(f"npm install finished but these packages are not at the pinned version: {found}")
    return missing


def _version_matches(requested: Optional[str], pinned: str) -> bool:
    "Check that a CDN version in a URL would resolve to the pinned version."
    if requested is None or requested == "latest":
        # A versionless URL resolves to the registry's newest release, which the pin may lag.
        # NOTE: accepted so that an unpinned page still loads, but the cached file may differ
        # from what the CDN serves today.
        return True
    if requested == pinned:
        return True
    # A partial version such as "5" or "5.8" resolves to the newest release with that prefix.
    if re.fullmatch(r"\d+(\.\d+)?", requested):
        return pinned.startswith(requested + ".")
    return False


def _default_file(package_dir: Path) -> Optional[str]:
    "Return the file a CDN serves for a package URL with no file path, from the package's manifest."
    try:
        manifest = json.loads((package_dir / "package.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    for field in ("jsdelivr", "unpkg", "browser", "main"):
        value = manifest.get(field)
        if isinstance(value, str) and value:
            return value
    return "index.js"


def local_path_for_url(url: str, cache_dir: Path = DEFAULT_CACHE_DIR) -> Optional[Path]:
    """Return the cached file that serves a jsDelivr or unpkg npm URL, or None.

    None means the URL is not an npm CDN URL, names a package that is not pinned,
    asks for a version the pin does not satisfy, or names a file the package lacks.
    """
    parts = urlsplit(url)
    prefix = CDN_NPM_PREFIXES.get(parts.hostname or "")
    if prefix is None or not parts.path.startswith(prefix):
        return None

    match = _SPEC_PATTERN.match(unquote(parts.path[len(prefix):]))
    if match is None:
        return None
    name, version, file = match.group("name"), match.group("version"), match.group("file")
    pinned = PINNED_PACKAGES.get(name)
    if pinned is None or not _version_matches(version, pinned):
        return None

    package_dir = (node_modules_dir(cache_dir) / name).resolve()
    if installed_version(name, cache_dir) != pinned:
        return None
    if not file:
        file = _default_file(package_dir)
        if file is None:
            return None

    candidate = (package_dir / file.lstrip("./")).resolve()
    if package_dir not in candidate.parents:
        return None
    if not candidate.is_file():
        # jsDelivr minifies on request: x.min.js is served from x.js when only that exists.
        unminified = re.sub(r"\.min\.(js|css)$", r".\1", candidate.name)
        if unminified == candidate.name:
            return None
        candidate = candidate.with_name(unminified)
        if not candidate.is_file():
            return None
    return candidate


def main(argv: Optional[list[str]] = None) -> int:
    "Install the missing pinned packages, or with --check only report them."
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_CACHE_DIR,
                        help=f"cache folder; npm installs into DIR/node_modules (default: {DEFAULT_CACHE_DIR})")
    parser.add_argument("--check", action="store_true",
                        help="install nothing; exit 1 when a pinned package is missing")
    args = parser.parse_args(argv)

    missing = missing_packages(args.dir)
    if args.check:
        for name, version in missing.items():
            print(f"missing: {name}@{version}")
        return 1 if missing else 0

    try:
        installed = install_assets(args.dir)
    except RuntimeError as error:
        print(f"assets: {error}", file=sys.stderr)
        return 1
    if installed:
        print("assets: installed " + ", ".join(f"{name}@{version}" for name, version in installed.items())
              + f" into {node_modules_dir(args.dir)}")
    else:
        print(f"assets: all {len(PINNED_PACKAGES)} pinned packages already in {node_modules_dir(args.dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
