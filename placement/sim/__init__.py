"""The openb trace simulator: replays a trace by the FGD paper's protocol with any registered policy."""
