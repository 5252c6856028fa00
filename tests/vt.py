"""A small VT100 model: what a terminal shows for the text written to it."""

from __future__ import annotations


class Screen:
    """What a VT100 shows for `text`: printable characters, \\r, \\n (the tty adds the \\r)
    and erase-line, with the deferred wrap of the last column that every terminal has."""

    def __init__(self, text: str, width: int) -> None:
        self.rows: list[list[str]] = [[]]
        self.row = self.col = 0
        wrap_pending = False
        position = 0
        while position < len(text):
            if text.startswith("\x1b[2K", position):
                self.rows[self.row] = []
                position += 4
                continue
            char = text[position]
            position += 1
            if char == "\r":
                self.col, wrap_pending = 0, False
            elif char == "\n":
                self._next_row()
                wrap_pending = False
            else:
                assert char >= " ", f"unexpected control {char!r}"
                if wrap_pending:
                    self._next_row()
                    wrap_pending = False
                line = self.rows[self.row]
                line.extend(" " * (self.col + 1 - len(line)))
                line[self.col] = char
                if self.col == width - 1:
                    wrap_pending = True
                else:
                    self.col += 1

    def _next_row(self) -> None:
        self.row, self.col = self.row + 1, 0
        if self.row == len(self.rows):
            self.rows.append([])

    @property
    def lines(self) -> list[str]:
        return ["".join(row).rstrip() for row in self.rows]
