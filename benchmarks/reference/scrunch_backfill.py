# The backfill script of Scrunch's "Agent Traffic API" guide (../shared/seeds/000_3e9f8bfaf1f55a92.txt,
# "Step 4: Backfill historical data with Python"), copied as published, with one fix: the guide
# passes `content=` to requests.post, which has no such argument (it is httpx's), so the script
# cannot run as written; it is `data=` here. Everything else is unchanged on purpose: the whole CSV
# is read into memory, batches are sent one after another, a 500 stops the run. The benchmark
# (bench_deliver.py) imports it and points ENDPOINT and API_KEY at the local receiver.
# ruff: noqa
import csv
import json
import time
import requests

API_KEY = "your-jwt-token"
SITE_ID = "your-site-id"
ENDPOINT = f"https://webhooks.scrunchai.com/v1/sites/{SITE_ID}/platforms/custom/web-traffic"
BATCH_SIZE_BYTES = 1_000_000  # 1 MB per batch


def load_payloads(csv_path: str) -> list[dict]:
    """Read a CSV of access log rows and map to API payload format."""
    payloads = []
    with open(csv_path, encoding="utf-8") as f:
        reader = csv.DictReader(f)
        for row in reader:
            domain = row.get("domain", "")
            path = row.get("path", "/") or "/"
            payload = {
                "domain": domain,
                "user_agent": row.get("user_agent", ""),
                "url": row.get("url", "") or f"https://{domain}{path}",
                "path": path,
                "method": row.get("method", "GET") or "GET",
                "status_code": int(row.get("status_code", "200") or "200"),
                "timestamp": int(row.get("timestamp", "0") or "0"),
                "response_time": int(row.get("response_time_ms", "0") or "0"),
                "ip": row.get("ip_address") or None,
            }
            payloads.append(payload)
    return payloads


def build_batches(payloads: list[dict], max_bytes: int = BATCH_SIZE_BYTES) -> list[list[dict]]:
    """Split payloads into batches that fit within max_bytes uncompressed."""
    batches, current, current_size = [], [], 0
    for p in payloads:
        size = len(json.dumps(p).encode()) + 1  # +1 for newline
        if current and current_size + size > max_bytes:
            batches.append(current)
            current, current_size = [], 0
        current.append(p)
        current_size += size
    if current:
        batches.append(current)
    return batches


def send_batch(batch: list[dict], retries: int = 3) -> None:
    """Send a single NDJSON batch with retry logic for rate limits."""
    ndjson = "\n".join(json.dumps(p) for p in batch) + "\n"
    for attempt in range(retries):
        response = requests.post(
            ENDPOINT,
            data=ndjson.encode("utf-8"),
            headers={
                "Content-Type": "application/x-ndjson",
                "X-Api-Key": API_KEY,
            },
            timeout=60,
        )
        if response.status_code == 200:
            return
        if response.status_code == 429:
            wait = int(response.headers.get("Retry-After", 5))
            print(f"Rate limited. Retrying in {wait}s...")
            time.sleep(wait)
        else:
            response.raise_for_status()
    raise RuntimeError(f"Failed to send batch after {retries} attempts")


def main(csv_path: str) -> None:
    payloads = load_payloads(csv_path)
    batches = build_batches(payloads)
    print(f"Loaded {len(payloads)} events across {len(batches)} batch(es)")

    for i, batch in enumerate(batches, 1):
        print(f"Sending batch {i}/{len(batches)} ({len(batch)} events)...")
        send_batch(batch)
        print(f"  Batch {i} sent successfully")

    print("Done.")


if __name__ == "__main__":
    import sys
    main(sys.argv[1])
