def main() -> None:
    print("ldawt")
