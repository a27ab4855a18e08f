"""The services, one module each, peers: none imports another (`engine.runner` composes them).

Each has `name`, `ready` (an asyncio.Event), `describe()`, `build(bus, settings)` and
`async run(stop)`; its handler is a plain method a test can call without a broker.
"""
