"""Pure per-chunk logic: rows in, checked and scored rows and rejections out."""
