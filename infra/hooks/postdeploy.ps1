# azd postdeploy hook (Windows): create the Event Grid subscriptions once the functions exist.
# Same steps as postdeploy.sh; see there for why this runs after the code deploy.
$ErrorActionPreference = 'Stop'

foreach ($name in 'AZURE_SUBSCRIPTION_ID', 'AZURE_RESOURCE_GROUP', 'AZURE_FUNCTION_APP_ID') {
    if (-not [Environment]::GetEnvironmentVariable($name)) { throw "$name is not set: run through azd (azd up)" }
}
$waitSeconds = if ($env:EVENTGRID_HOOK_WAIT_SECONDS) { [int]$env:EVENTGRID_HOOK_WAIT_SECONDS } else { 600 }
$url = "https://management.azure.com$($env:AZURE_FUNCTION_APP_ID)/functions?api-version=2024-04-01"

Write-Host "Waiting for keyvault_events and refresh_events (up to ${waitSeconds}s)..."
$waited = 0
while ($true) {
    $names = (az rest --method get --url $url --query "value[].name" --output tsv 2>$null) -join "`n"
    if ($names -match 'keyvault_events' -and $names -match 'refresh_events') { break }
    if ($waited -ge $waitSeconds) {
        throw "The functions are not listed after ${waitSeconds}s; check the deployment log, then run: azd hooks run postdeploy"
    }
    Start-Sleep -Seconds 15
    $waited += 15
}

Write-Host "Creating the Event Grid subscriptions..."
az deployment group create `
    --subscription $env:AZURE_SUBSCRIPTION_ID `
    --resource-group $env:AZURE_RESOURCE_GROUP `
    --name eventgrid-subscriptions `
    --template-file (Join-Path $PSScriptRoot '..' 'subscriptions.bicep') `
    --parameters `
        functionAppId=$env:AZURE_FUNCTION_APP_ID `
        keyVaultSystemTopicName=$env:KEY_VAULT_SYSTEM_TOPIC_NAME `
        keyVaultResourceGroupName=$env:KEY_VAULT_RESOURCE_GROUP `
        refreshEventsTopicName=$env:REFRESH_EVENTS_TOPIC_NAME `
        storageAccountId=$env:AZURE_STORAGE_ACCOUNT_ID `
        deadLetterContainerName=$env:DEAD_LETTER_CONTAINER_NAME `
    --output none
if ($LASTEXITCODE -ne 0) { throw "az deployment group create failed ($LASTEXITCODE)" }
Write-Host "Event Grid subscriptions are in place: evgs-keyvault-events, evgs-refresh-events."
