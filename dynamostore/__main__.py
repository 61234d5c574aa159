from dynamostore.cli.main import main

raise SystemExit(main())
