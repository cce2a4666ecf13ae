"""The job browser: ``skiplock ui`` serves server-rendered HTML pages for the queue (Starlette)."""
