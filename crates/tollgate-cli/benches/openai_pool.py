"""The common alternative to `tollgate batch`: an asyncio pool of workers
calling the official `openai` client, which retries 429s by itself.

    python3 openai_pool.py INPUT OUTPUT BASE_URL [WORKERS]

Reads INPUT (one chat completion body a line) as the workers take lines,
writes one JSON record a line to OUTPUT, and prints the rate and the
failures. BASE_URL is the API root, e.g. http://127.0.0.1:18400/v1.
"""

import asyncio
import json
import sys
import time

import openai


async def main(path_in, path_out, base_url, workers):
    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=5)
    queue = asyncio.Queue(maxsize=workers * 4)
    ok = failed = 0
    out = open(path_out, "w")

    async def worker():
        nonlocal ok, failed
        while True:
            item = await queue.get()
            if item is None:
                return
            number, body = item
            try:
                answer = await client.chat.completions.create(**body)
                out.write(json.dumps({"line": number, "ok": True, "response": answer.model_dump()}) + "\n")
                ok += 1
            except Exception as error:  # noqa: BLE001 - every failure is a record
                out.write(json.dumps({"line": number, "ok": False, "error": str(error)}) + "\n")
                failed += 1

    started = time.monotonic()
    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    with open(path_in) as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                await queue.put((number, json.loads(line)))
    for _ in tasks:
        await queue.put(None)
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - started
    out.close()
    print(f"ok: {ok}, failed: {failed}, {ok / elapsed:.2f} requests/s over {elapsed:.1f} s")


if __name__ == "__main__":
    workers = int(sys.argv[4]) if len(sys.argv) > 4 else 512
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], workers))
