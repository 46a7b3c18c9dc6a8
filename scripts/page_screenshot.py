"""A full-page screenshot of a report at a given window width, to look at how its tables and figures fit
(e.g. cv_report.html at 1200 px). Run with a Python that has playwright, driving Debian's chromium:

    /tmp/hipx-screenshot-venv/bin/python scripts/page_screenshot.py outs/G/cv_report.html shot.png --width 1200
"""
import argparse
import shutil
from pathlib import Path

from playwright.sync_api import sync_playwright


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("page", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--width", type=int, default=1200)
    p.add_argument("--height", type=int, default=900)
    p.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    args = p.parse_args()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.goto(args.page.resolve().as_uri())
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        page.screenshot(path=str(args.out), full_page=True)
        browser.close()
    print(f"{args.out}: {args.width} px window, page wider than the window by {overflow} px")


if __name__ == "__main__":
    main()
