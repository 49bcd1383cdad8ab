"""The Turnout router: traffic splitting, shadowing and inference graphs in front of model servers.

It depends on ``serving.protocol`` for request types and never on the model server itself.
"""

__all__: list[str] = []
