from packet_flow.cli import main

raise SystemExit(main())
