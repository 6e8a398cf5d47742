"""The data layer, bottom of the package: where files live (``storage``), which images there are and
how they split (``listing``), bytes to model input (``decode``), reading files with Ray Data
(``reading``), the stages' on-disk caches (``cache``) and the built-in synthetic smoke set
(``synthetic``). Import the module you need: serving and ``model/`` import ``decode`` alone."""
