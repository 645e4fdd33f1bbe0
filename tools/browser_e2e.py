"""The web page of `sknet serve`, end to end in headless Chromium.

Starts the server on a free port, opens its page, uploads an image through the file input,
waits for the answer, checks that the top-1 label shown equals `sknet predict`'s and that the
attention chart has one bar per SK unit, and saves a screenshot.

    python tools/browser_e2e.py --sknet target/debug/sknet \
        --weights models/cifar10.safetensors \
        --image data/cifar10-mini/cat/0000.jpg --screenshot serve-page.png

Needs Debian's `chromium` and `chromium-driver`, and Selenium (pip). Exits 1 with the reason on
any failure.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def start_server(sknet, weights):
    server = subprocess.Popen(
        [sknet, "serve", "--weights", weights, "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 60
    line = server.stdout.readline()
    if not line.startswith("listening on ") or time.time() > deadline:
        raise RuntimeError(f"server did not start: {line!r}")
    return server, line.split("listening on ", 1)[1].strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sknet", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--screenshot", required=True)
    ap.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = ap.parse_args()

    predicted = subprocess.run(
        [args.sknet, "predict", args.image, "--weights", args.weights, "--json"],
        capture_output=True, text=True, check=True,
    )
    expected = json.loads(predicted.stdout)[0]["top"][0]["label"]

    server, url = start_server(args.sknet, args.weights)
    driver = None
    try:
        with urllib.request.urlopen(f"{url}/v1/model") as r:
            units = json.load(r)["units"]
        options = webdriver.ChromeOptions()
        for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"]:
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(args.chromedriver), options=options)
        driver.get(url + "/")
        state = lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state")
        WebDriverWait(driver, 30).until(lambda d: state(d) == "ready")
        driver.find_element(By.ID, "file").send_keys(os.path.abspath(args.image))
        WebDriverWait(driver, 60).until(lambda d: state(d) in ("done", "error"))
        driver.save_screenshot(args.screenshot)
        if state(driver) == "error":
            raise RuntimeError("the page shows an error: " + driver.find_element(By.ID, "error").text)
        shown = driver.find_element(By.ID, "top1-label").text
        if shown != expected:
            raise RuntimeError(f"top-1 shown {shown!r}, sknet predict says {expected!r}")
        bars = driver.find_elements(By.CSS_SELECTOR, "#chart rect.bar")
        if len(bars) != len(units):
            raise RuntimeError(f"{len(bars)} bars in the attention chart for {len(units)} SK units")
        print(f"ok: {args.image}: top-1 {shown!r} as predict says, {len(bars)} unit bars; "
              f"screenshot {args.screenshot}")
    except Exception as e:  # noqa: BLE001 (every failure is reported the same way)
        print(f"browser end-to-end test failed: {e}", file=sys.stderr)
        return 1
    finally:
        if driver is not None:
            driver.quit()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
