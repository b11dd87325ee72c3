"""Peer for the upload benchmark: the Azure Python SDK's own page-blob upload.

    python sdk_upload.py CONN_STRING CONTAINER BLOB FILE CONCURRENCY

Uploads FILE with `upload_blob(blob_type="PageBlob", max_concurrency=N)` (the SDK skips
all-zero 4 MiB chunks), then sums the blob's page ranges (what was really written) and
prints one JSON line: {"seconds": ..., "bytes_written": ..., "ranges": ...}.
"""
import json
import sys
import time

from azure.storage.blob import BlobServiceClient

# Azurite 3.37 rejects the SDK's default x-ms-version (2026-10-06); pin one both accept.
API_VERSION = "2021-08-06"


def main() -> None:
    conn, container, blob, path, conc = sys.argv[1:6]
    service = BlobServiceClient.from_connection_string(conn, api_version=API_VERSION)
    cc = service.get_container_client(container)
    if not cc.exists():
        cc.create_container()
    bc = cc.get_blob_client(blob)
    start = time.perf_counter()
    with open(path, "rb") as f:
        bc.upload_blob(f, blob_type="PageBlob", max_concurrency=int(conc), overwrite=True)
    seconds = time.perf_counter() - start
    ranges = bc.get_page_ranges()[0]
    written = sum(r["end"] - r["start"] + 1 for r in ranges)
    print(json.dumps({"seconds": seconds, "bytes_written": written, "ranges": len(ranges)}))


if __name__ == "__main__":
    main()
