"""``python -m workshop.emulator [options]``: serve the Checkout emulator."""

from workshop.emulator.server import main

main()
