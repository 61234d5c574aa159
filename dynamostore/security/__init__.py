"""Security of a node and its cluster: certificates (`certs`), TLS contexts (`tls`), client API tokens
(`tokens`), which route needs which permission (`authz`), and what a node builds from its settings
(`node_security`). The token model and the policy are pure; only `certs` and `tls` touch files."""
