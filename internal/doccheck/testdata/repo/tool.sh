#!/bin/sh
echo fixture
