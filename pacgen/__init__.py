"""PACGen Studio: put your own objects into generated images, exactly where you want them."""
