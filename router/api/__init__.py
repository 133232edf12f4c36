"""The push-send API's HTTP surface (aiohttp): routes (`app`), the OpenAPI document, the
brute-force brake and the answers to requests aiohttp's parser refuses."""
