"""`ttspo serve`: a local web page to browse the store, listen to pairs and label them.

Starlette (the ASGI framework) and uvicorn (its server): app.py makes the app;
browse.py pages tables through the same confined DuckDB queries as `ttspo sql`;
audio.py serves a stored row's audio with HTTP range requests; labeling.py draws
blind pairs and writes judgements through one writer; the page is static/.
"""
