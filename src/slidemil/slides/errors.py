"""The one error every slide reader raises: a message naming the file and what to do, so a rule log
carries one readable line instead of a traceback from inside OpenSlide, libvips or a JPEG decoder."""


class SlideError(RuntimeError):
    """A slide cannot be used; the message names the file and the fix."""
