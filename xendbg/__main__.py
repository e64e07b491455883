from xendbg.cli import main

raise SystemExit(main())
