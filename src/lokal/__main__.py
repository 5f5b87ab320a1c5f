from lokal.cli.main import main

raise SystemExit(main())
