"""In-distribution safety data: DGR refinement and ThinkSafe self-generation."""
