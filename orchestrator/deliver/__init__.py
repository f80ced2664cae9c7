"""Deliver: stitch, post step (captions, renditions), atomic publish of every output, reposts, webhooks."""
