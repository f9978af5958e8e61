"""The HTTP surface: handlers, middlewares, routes. The only package that imports aiohttp.web."""
