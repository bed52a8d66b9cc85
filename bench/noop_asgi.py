"""A pure ASGI app that answers every request with a fixed JSON body: the HTTP limit of this
machine (uvicorn, httptools, uvloop, one worker). Used by bench/serving.py."""

BODY = b'{"outputs": []}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
