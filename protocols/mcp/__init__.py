"""The MCP front-end: AI agents reach the same governed data products as apps, over the Model
Context Protocol (Streamable HTTP at ``/mcp`` on the HTTP listener, stdio via ``edgebridge mcp``).
See docs/mcp.md."""
