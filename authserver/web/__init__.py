"""The HTTP surface: handlers, routes, problem+json. The only package that imports aiohttp.web."""
