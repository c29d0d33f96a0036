"""gpcrun: plan, launch, supervise and measure llama.cpp's llama-server."""
__version__ = "0.1.0"
