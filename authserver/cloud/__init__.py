"""The vendor OpenAPI: signing, the async client, the quota governor."""
