// Everything `azd up` provisions for the Power BI credential healer (see docs/deploy.md).
//
// Step 1 (this file, `azd provision`): identity, storage, monitoring, Key Vault access, Event Grid
// topics, the Function App (Flex Consumption) with every app setting.
// Step 2 (`azd deploy`): the code.
// Step 3 (the azd `postdeploy` hook, infra/hooks/postdeploy.*): infra/subscriptions.bicep creates
// the Event Grid subscriptions, once the functions they point at exist. A subscription to an Azure
// Function endpoint fails while the function is not deployed yet, so it cannot live in step 1.
targetScope = 'subscription'

// ---------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------
@minLength(1)
@maxLength(64)
@description('Name of the azd environment: part of the resource group name, seed of the unique token in every other name, and the azd-env-name tag.')
param environmentName string

@minLength(1)
@description('Region of the app resources. Flex Consumption must be available there (az functionapp list-flexconsumption-locations). The Key Vault system topic follows the vault instead.')
param location string

@description('Name of the app resource group. Empty: rg-<environmentName>.')
param resourceGroupName string = ''

@description('Name of an EXISTING Key Vault holding the bound secrets (the common case). Empty: a new RBAC-mode vault kv-<token> is created in the app resource group.')
param keyVaultName string = ''

@description('Resource group of the existing Key Vault (same subscription). Empty: the app resource group.')
param keyVaultResourceGroupName string = ''

@description('Names of the secrets the app may read. Given: Key Vault Secrets User is granted on each of these secrets only. Empty: on the whole vault.')
param keyVaultSecretNames array = []

@description('Name of the Event Grid system topic on the vault, in the vault\'s resource group. A vault has at most one system topic: if it already has one, give its name here (it is updated in place and gets a system-assigned identity). Empty: evgst-<token>.')
param keyVaultSystemTopicName string = ''

@description('Send the vault\'s audit log to the Log Analytics workspace (a diagnostic setting on the vault). The workbook uses it for the time from rotation to heal.')
param keyVaultDiagnostics bool = true

@description('REMEDIATION_BINDINGS: the path of the bindings file shipped with the app (relative to the app root, e.g. bindings.json), or the bindings JSON itself (inline).')
param remediationBindings string = 'bindings.json'

@description('REMEDIATION_SWEEP_SCHEDULE: NCRONTAB schedule (six fields) of the timer sweep.')
param sweepSchedule string = '0 */15 * * * *'

@minValue(1)
@maxValue(64)
@description('REMEDIATION_CONCURRENCY: targets healed at once.')
param concurrency int = 8

@minValue(1)
@maxValue(10)
@description('REMEDIATION_MAX_ATTEMPTS: credential updates per target per attempt window.')
param maxAttempts int = 3

@minValue(60)
@maxValue(604800)
@description('REMEDIATION_ATTEMPT_WINDOW: the attempt window, in seconds.')
param attemptWindowSeconds int = 86400

@minValue(0)
@maxValue(8)
@description('REMEDIATION_REFRESH_BUDGET: refreshes the healer starts per dataset per UTC day.')
param refreshBudget int = 3

@minValue(0)
@maxValue(7200)
@description('REMEDIATION_REFRESH_TIMEOUT: seconds to follow a refresh (0: do not follow).')
param refreshTimeoutSeconds int = 600

@minValue(1)
@maxValue(300)
@description('REMEDIATION_HTTP_TIMEOUT: per-request read timeout, in seconds.')
param httpTimeoutSeconds int = 30

@minValue(10)
@maxValue(3600)
@description('REMEDIATION_SWEEP_BUDGET: seconds a sweep may start new work (keep it under host.json functionTimeout).')
param sweepBudgetSeconds int = 240

@minValue(0)
@maxValue(2592000)
@description('REMEDIATION_INVENTORY_REFRESH: every dataset\'s data sources are read again within this many seconds (0: every sweep).')
param inventoryRefreshSeconds int = 86400

@allowed([
  'auto'
  'admin'
  'per-dataset'
])
@description('REMEDIATION_INVENTORY_SOURCE: how the inventory learns which data sources a dataset uses: the admin scanner APIs where the identity may use them, else one read per dataset (auto); the scanner only (admin); one read per dataset only (per-dataset).')
param inventorySource string = 'auto'

@minValue(0)
@maxValue(100000)
@description('REMEDIATION_FANOUT_TARGETS: a queued secret heal with more targets than this becomes one queued message per target, spread over instances (0: never).')
param fanoutTargets int = 100

@minValue(30)
@maxValue(86400)
@description('REMEDIATION_LEASE_SECONDS: how long one writer holds a target.')
param leaseSeconds int = 300

@minValue(0)
@maxValue(3600)
@description('REMEDIATION_SETTLE_SECONDS: a Key Vault version is not presented before its created time plus this (rotations that write Key Vault before the source).')
param settleSeconds int = 60

@description('REMEDIATION_WORK_QUEUE: the Storage queue (on the app\'s storage account) of the commands push triggers defer; its poison queue is <name>-poison.')
@minLength(3)
@maxLength(56)
param workQueueName string = 'remediation-work'

@description('POWERBI_API_URL: the Power BI REST base of your cloud.')
param powerBiApiUrl string = 'https://api.powerbi.com/v1.0/myorg'

@description('FABRIC_API_URL: the Fabric REST base (Fabric connection targets); the token scope is derived from its host.')
param fabricApiUrl string = 'https://api.fabric.microsoft.com/v1'

@description('POWERBI_PUBLIC_CLIENT_ID: app registration (public client flows allowed) that signs in the service accounts of OAuth2 caller-identity bindings; the managed identity cannot. Empty: no such bindings.')
param powerBiPublicClientId string = ''

@description('POWERBI_SCOPE: token scope override. Empty: derived from the API host (sovereign clouds included).')
param powerBiScope string = ''

@description('AZURE_AUTHORITY_HOST: the Entra ID host of your cloud.')
param authorityHost string = 'https://login.microsoftonline.com'

@description('Object ids of the principals that publish PowerBI.RefreshFailed events to the custom topic (a pipeline\'s or a Logic App\'s identity): each gets EventGrid Data Sender on that topic only. The topic accepts Entra ID only (no access keys).')
param refreshEventSenderPrincipalIds array = []

@description('Fabric job events through an Eventstream custom endpoint (docs/events.md, recipe 1), signed in with its connection string: the name of a secret in the app\'s Key Vault that holds the custom endpoint\'s Event Hubs connection string. REMEDIATION_EVENTSTREAM_CONNECTION becomes a Key Vault reference to it (never the value) and the identity may read it. Empty, with eventstreamNamespace empty too: the job_events function does not exist.')
param eventstreamConnectionSecretName string = ''

@description('Fabric job events through an Eventstream custom endpoint signed in with Microsoft Entra ID instead of a key: its fully qualified namespace (es-....servicebus.windows.net, from the custom endpoint\'s details). The app\'s identity signs in; give it a role on the eventstream\'s Fabric workspace. Empty: not used.')
param eventstreamNamespace string = ''

@description('REMEDIATION_EVENTSTREAM_HUB: the custom endpoint\'s event hub name (es_..., on its Keys page).')
param eventstreamHubName string = ''

@description('REMEDIATION_EVENTSTREAM_CONSUMER_GROUP: the custom endpoint\'s consumer group (on its Basics page).')
param eventstreamConsumerGroup string = '$Default'

@description('Object id of the person running azd (azd sets AZURE_PRINCIPAL_ID): gets Storage Blob Data Reader on the dead-letter container only, to replay dead-lettered events. Empty: nobody.')
param operatorPrincipalId string = ''

@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
@description('Principal type of operatorPrincipalId.')
param operatorPrincipalType string = 'User'

@description('E-mail address for the failed/rejected remediation alert. Empty: the alert fires without an action group (visible in Azure Monitor only).')
param alertEmail string = ''

@minValue(40)
@maxValue(1000)
@description('Flex Consumption: maximum number of instances.')
param maximumInstanceCount int = 40

@allowed([
  512
  2048
  4096
])
@description('Flex Consumption: instance memory in MB.')
param instanceMemoryMB int = 2048

// ---------------------------------------------------------------------------------------------
// Names (Azure abbreviation conventions; infra/abbreviations.json)
// ---------------------------------------------------------------------------------------------
var abbrs = loadJsonContent('abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
  workload: 'pbi-credential-healer'
}
var rgName = empty(resourceGroupName) ? '${abbrs.resourcesResourceGroups}${environmentName}' : resourceGroupName
var functionAppName = '${abbrs.webSitesFunctions}${resourceToken}'
var newVault = empty(keyVaultName)
var vaultName = newVault ? '${abbrs.keyVaultVaults}${resourceToken}' : keyVaultName
var vaultRgName = empty(keyVaultResourceGroupName) ? rgName : keyVaultResourceGroupName
var systemTopicName = empty(keyVaultSystemTopicName) ? '${abbrs.eventGridSystemTopics}${resourceToken}' : keyVaultSystemTopicName
var deadLetterContainerName = 'eventgrid-deadletter'
var deploymentContainerName = 'app-package-${take(functionAppName, 32)}-${take(resourceToken, 7)}'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: rgName
  location: location
  tags: tags
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: '${abbrs.managedIdentityUserAssignedIdentities}${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    location: location
    tags: tags
    logAnalyticsName: '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    applicationInsightsName: '${abbrs.insightsComponents}${resourceToken}'
    actionGroupName: '${abbrs.insightsActionGroups}${resourceToken}'
    alertRuleName: '${abbrs.insightsScheduledQueryRules}remediation-failed-${resourceToken}'
    alertEmail: alertEmail
    identityPrincipalId: identity.outputs.principalId
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: '${abbrs.storageStorageAccounts}${resourceToken}'
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
    deadLetterContainerName: deadLetterContainerName
    workQueueName: workQueueName
    identityPrincipalId: identity.outputs.principalId
    operatorPrincipalId: operatorPrincipalId
    operatorPrincipalType: operatorPrincipalType
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  scope: resourceGroup(vaultRgName)
  dependsOn: [
    rg
  ]
  params: {
    name: vaultName
    createVault: newVault
    location: location
    tags: tags
    // A restricted grant also covers the Eventstream connection string's secret.
    secretNames: empty(keyVaultSecretNames) || empty(eventstreamConnectionSecretName) ? keyVaultSecretNames : union(keyVaultSecretNames, [eventstreamConnectionSecretName])
    identityPrincipalId: identity.outputs.principalId
    systemTopicName: systemTopicName
    logAnalyticsWorkspaceId: keyVaultDiagnostics ? monitoring.outputs.logAnalyticsWorkspaceId : ''
  }
}

module eventGrid 'modules/eventgrid.bicep' = {
  name: 'eventgrid'
  scope: rg
  params: {
    location: location
    tags: tags
    customTopicName: '${abbrs.eventGridDomainsTopics}refresh-${resourceToken}'
    storageAccountName: storage.outputs.name
    deadLetterContainerName: deadLetterContainerName
    systemTopicPrincipalId: keyVault.outputs.systemTopicPrincipalId
    senderPrincipalIds: refreshEventSenderPrincipalIds
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  scope: rg
  params: {
    name: functionAppName
    planName: '${abbrs.webServerFarms}${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    applicationInsightsConnectionString: monitoring.outputs.applicationInsightsConnectionString
    keyVaultUri: keyVault.outputs.vaultUri
    remediationBindings: remediationBindings
    sweepSchedule: sweepSchedule
    concurrency: concurrency
    maxAttempts: maxAttempts
    attemptWindowSeconds: attemptWindowSeconds
    refreshBudget: refreshBudget
    refreshTimeoutSeconds: refreshTimeoutSeconds
    httpTimeoutSeconds: httpTimeoutSeconds
    sweepBudgetSeconds: sweepBudgetSeconds
    inventoryRefreshSeconds: inventoryRefreshSeconds
    inventorySource: inventorySource
    fanoutTargets: fanoutTargets
    leaseSeconds: leaseSeconds
    settleSeconds: settleSeconds
    workQueueName: workQueueName
    powerBiApiUrl: powerBiApiUrl
    fabricApiUrl: fabricApiUrl
    powerBiScope: powerBiScope
    powerBiPublicClientId: powerBiPublicClientId
    authorityHost: authorityHost
    eventstreamConnection: empty(eventstreamConnectionSecretName) ? '' : '@Microsoft.KeyVault(VaultName=${vaultName};SecretName=${eventstreamConnectionSecretName})'
    eventstreamNamespace: eventstreamNamespace
    eventstreamHubName: eventstreamHubName
    eventstreamConsumerGroup: eventstreamConsumerGroup
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
  }
  // The identity must hold its storage roles before the host starts (deployment package, host
  // locks, the ledger tables) and may send telemetry from the first invocation.
  dependsOn: [
    storage
    monitoring
  ]
}

// ---------------------------------------------------------------------------------------------
// Outputs (azd stores them in .azure/<env>/.env; the postdeploy hook reads them)
// ---------------------------------------------------------------------------------------------
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output AZURE_FUNCTION_APP_ID string = functionApp.outputs.id
output AZURE_FUNCTION_APP_URL string = functionApp.outputs.uri
output REMEDIATE_ENDPOINT string = '${functionApp.outputs.uri}/api/remediate'
output REMEDIATIONS_ENDPOINT string = '${functionApp.outputs.uri}/api/remediations'
output KEYVAULT_EVENTS_FUNCTION_ID string = '${functionApp.outputs.id}/functions/keyvault_events'
output REFRESH_EVENTS_FUNCTION_ID string = '${functionApp.outputs.id}/functions/refresh_events'
output JOB_EVENTS_ENABLED bool = !empty(eventstreamConnectionSecretName) || !empty(eventstreamNamespace)
output AZURE_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output AZURE_IDENTITY_PRINCIPAL_ID string = identity.outputs.principalId
output KEY_VAULT_NAME string = vaultName
output KEY_VAULT_URL string = keyVault.outputs.vaultUri
output KEY_VAULT_RESOURCE_GROUP string = vaultRgName
output KEY_VAULT_SYSTEM_TOPIC_NAME string = systemTopicName
output REFRESH_EVENTS_TOPIC_NAME string = eventGrid.outputs.customTopicName
output REFRESH_EVENTS_TOPIC_ENDPOINT string = eventGrid.outputs.customTopicEndpoint
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_STORAGE_ACCOUNT_ID string = storage.outputs.id
output DEAD_LETTER_CONTAINER_NAME string = deadLetterContainerName
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.applicationInsightsName
output WORKBOOK_ID string = monitoring.outputs.workbookId
