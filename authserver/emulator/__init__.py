"""A local stand-in for the vendor OpenAPI, faithful enough for the official SDK."""
